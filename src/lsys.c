/*
 * lsys.c - the `loreley.sys` module: processes, environment and small filesystem
 * helpers. The local servers of the demo and the tests, the example workers and the
 * fault-injection harness are built on it.
 *
 * Errors: misuse raises; failures of the world return nil, message.
 *
 *   sys.environ() -> {NAME = value}         sys.setenv(name, value|nil)
 *   sys.getpid()  sys.geteuid()             sys.free_port() -> a free loopback TCP port
 *   sys.mkdtemp([prefix]) -> path           sys.exists(path) -> bool
 *   sys.read_file(path) -> text | nil, msg  sys.write_file(path, text) -> true | nil, msg
 *   sys.spawn(argv, opts) -> pid            opts: env, cwd, stdin, stdout, stderr, setsid
 *   sys.run(argv, opts) -> {code, signal, stdout, stderr, timed_out}
 *                                           opts: env, cwd, input, timeout
 *   sys.kill(pid, sig)  sys.alive(pid)      sys.wait(pid[, timeout]) -> {code, signal}
 *   sys.reap() -> n: reaps exited children nobody waits for (daemons reparented to us)
 *
 * `env` is a table of overrides on the current environment: a string sets a variable,
 * false removes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "host.h"
#include "lmod.h"

extern char **environ;

/* --- children ----------------------------------------------------------------------------
 * The host is a child subreaper (host.c), so daemons started through it (pg_ctl's
 * postmaster, redis-server --daemonize) become its children when their parent exits,
 * and their zombies are ours to reap: otherwise a killed server lingers as a zombie that
 * kill(pid, 0) still reports alive. Children the Lua side spawned and will wait for
 * itself are tracked, and left alone. */

#define MAX_TRACKED 256
static pid_t tracked[MAX_TRACKED];
static int tracked_count;

static void track(pid_t pid)
{
    if (tracked_count < MAX_TRACKED)
        tracked[tracked_count++] = pid;
}

static void untrack(pid_t pid)
{
    for (int i = 0; i < tracked_count; i++)
        if (tracked[i] == pid) {
            tracked[i] = tracked[--tracked_count];
            return;
        }
}

static int is_tracked(pid_t pid)
{
    for (int i = 0; i < tracked_count; i++)
        if (tracked[i] == pid)
            return 1;
    return 0;
}

/* Reaps exited children that nobody waits for. Returns how many were reaped. */
static int reap_orphans(void)
{
    int reaped = 0;
    for (int guard = 0; guard < 1024; guard++) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0)
            break;
        if (is_tracked(info.si_pid)) {
            /* A tracked child is first in line: reap the others by scanning /proc. */
            char path[64], buf[512];
            FILE *list = popen("ls /proc", "r");
            if (!list)
                break;
            int pid;
            while (fscanf(list, "%d", &pid) == 1) {
                snprintf(path, sizeof path, "/proc/%d/stat", pid);
                FILE *f = fopen(path, "r");
                if (!f)
                    continue;
                size_t n = fread(buf, 1, sizeof buf - 1, f);
                fclose(f);
                buf[n] = '\0';
                const char *p = strrchr(buf, ')');
                int ppid;
                char state;
                if (p && sscanf(p + 1, " %c %d", &state, &ppid) == 2 && state == 'Z' &&
                    ppid == getpid() && !is_tracked(pid) && waitpid(pid, NULL, WNOHANG) == pid)
                    reaped++;
            }
            pclose(list);
            break;
        }
        if (waitpid(info.si_pid, NULL, WNOHANG) == info.si_pid)
            reaped++;
    }
    return reaped;
}

static int sys_reap(lua_State *L)
{
    lua_pushinteger(L, reap_orphans());
    return 1;
}

static int sys_environ(lua_State *L)
{
    lua_newtable(L);
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        lua_pushlstring(L, *e, (size_t)(eq - *e));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);
    }
    return 1;
}

static int sys_setenv(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    int r = lua_isnoneornil(L, 2) ? unsetenv(name) : setenv(name, luaL_checkstring(L, 2), 1);
    if (r != 0)
        return lmod_fail(L, "setenv %s: %s", name, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static int sys_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

static int sys_geteuid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)geteuid());
    return 1;
}

/* Binds 127.0.0.1:0 and reports the port the kernel chose. */
static int sys_free_port(lua_State *L)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return lmod_fail(L, "socket: %s", strerror(errno));
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        int e = errno;
        close(fd);
        return lmod_fail(L, "cannot find a free port: %s", strerror(e));
    }
    close(fd);
    lua_pushinteger(L, ntohs(addr.sin_port));
    return 1;
}

static int sys_mkdtemp(lua_State *L)
{
    const char *prefix = luaL_optstring(L, 1, "/tmp/loreley-");
    lua_pushfstring(L, "%sXXXXXX", prefix);
    char *templ = strdup(lua_tostring(L, -1));
    if (!templ)
        return luaL_error(L, "out of memory");
    if (!mkdtemp(templ)) {
        int e = errno;
        free(templ);
        return lmod_fail(L, "mkdtemp %s: %s", lua_tostring(L, -1), strerror(e));
    }
    lua_pushstring(L, templ);
    free(templ);
    return 1;
}

static int sys_read_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int r = lmod_push_file(L, path);
    if (r == 1)
        return 1;
    if (r == 0)
        return lmod_fail(L, "cannot open %s: %s", path, strerror(ENOENT));
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
}

static int sys_write_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t n;
    const char *text = luaL_checklstring(L, 2, &n);
    FILE *f = fopen(path, "wb");
    if (!f)
        return lmod_fail(L, "cannot open %s: %s", path, strerror(errno));
    size_t written = fwrite(text, 1, n, f);
    int failed = written != n || fflush(f) != 0;
    int e = errno;
    if (fclose(f) != 0 && !failed) {
        failed = 1;
        e = errno;
    }
    if (failed)
        return lmod_fail(L, "cannot write %s: %s", path, strerror(e));
    lua_pushboolean(L, 1);
    return 1;
}

static int sys_exists(lua_State *L)
{
    struct stat st;
    lua_pushboolean(L, stat(luaL_checkstring(L, 1), &st) == 0);
    return 1;
}

/* --- argv and envp -------------------------------------------------------------------- */

typedef struct strv {
    char **items;
    size_t count;
} strv;

static void strv_free(strv *v)
{
    if (!v->items)
        return;
    for (size_t i = 0; i < v->count; i++)
        free(v->items[i]);
    free(v->items);
    v->items = NULL;
}

/* Lives in a userdata so a Lua error while building it frees everything (__gc). */
typedef struct spawn_args {
    strv argv;
    strv envp;
} spawn_args;

static int spawn_args_gc(lua_State *L)
{
    spawn_args *a = lua_touserdata(L, 1);
    strv_free(&a->argv);
    strv_free(&a->envp);
    return 0;
}

static spawn_args *new_spawn_args(lua_State *L)
{
    spawn_args *a = lua_newuserdata(L, sizeof *a);
    memset(a, 0, sizeof *a);
    if (luaL_newmetatable(L, "loreley.sys.spawn_args")) {
        lua_pushcfunction(L, spawn_args_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return a;
}

static void check_argv(lua_State *L, int idx, strv *out)
{
    luaL_checktype(L, idx, LUA_TTABLE);
    size_t n = lua_objlen(L, idx);
    if (n == 0)
        luaL_argerror(L, idx, "argv must be a non-empty array of strings");
    out->items = calloc(n + 1, sizeof(char *));
    if (!out->items)
        luaL_error(L, "out of memory");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        if (!lua_isstring(L, -1))
            luaL_error(L, "argv[%d] must be a string, got %s", (int)i + 1,
                       luaL_typename(L, -1));
        out->items[i] = strdup(lua_tostring(L, -1));
        out->count = i + 1;
        lua_pop(L, 1);
    }
}

/* The current environment with the overrides of the table at idx (nil: unchanged). */
static void build_envp(lua_State *L, int idx, strv *out)
{
    size_t base = 0;
    for (char **e = environ; e && *e; e++)
        base++;
    size_t extra = 0;
    if (lua_istable(L, idx)) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            extra++;
            lua_pop(L, 1);
        }
    } else if (!lua_isnoneornil(L, idx)) {
        luaL_error(L, "option 'env' must be a table, got %s", luaL_typename(L, idx));
    }
    out->items = calloc(base + extra + 1, sizeof(char *));
    if (!out->items)
        luaL_error(L, "out of memory");
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t name_len = eq ? (size_t)(eq - *e) : strlen(*e);
        int overridden = 0;
        if (lua_istable(L, idx)) {
            lua_pushlstring(L, *e, name_len);
            lua_rawget(L, idx);
            overridden = !lua_isnil(L, -1);
            lua_pop(L, 1);
        }
        if (!overridden)
            out->items[out->count++] = strdup(*e);
    }
    if (lua_istable(L, idx)) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING)
                luaL_error(L, "env keys must be strings");
            if (lua_isstring(L, -1)) {
                lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
                out->items[out->count++] = strdup(lua_tostring(L, -1));
                lua_pop(L, 1);
            } else if (!(lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
                luaL_error(L, "env.%s must be a string or false, got %s",
                           lua_tostring(L, -2), luaL_typename(L, -1));
            }
            lua_pop(L, 1);
        }
    }
}

/* In the child: restore default dispositions changed by the host, then exec. */
static void child_exec(spawn_args *a, const char *cwd)
{
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (cwd && chdir(cwd) != 0) {
        dprintf(2, "loreley.sys: chdir %s: %s\n", cwd, strerror(errno));
        _exit(127);
    }
    execvpe(a->argv.items[0], a->argv.items, a->envp.items);
    dprintf(2, "loreley.sys: cannot run %s: %s\n", a->argv.items[0], strerror(errno));
    _exit(127);
}

static int open_redirect(const char *path, int flags)
{
    return open(path, flags | O_CLOEXEC, 0644);
}

static const char *const spawn_keys[] = {"env", "cwd", "stdin", "stdout", "stderr",
                                         "setsid", NULL};

static int sys_spawn(lua_State *L)
{
    lmod_check_options(L, 2, spawn_keys, "sys.spawn");
    spawn_args *a = new_spawn_args(L);
    int ud = lua_gettop(L);
    check_argv(L, 1, &a->argv);
    if (lua_istable(L, 2))
        lua_getfield(L, 2, "env");
    else
        lua_pushnil(L);
    build_envp(L, lua_gettop(L), &a->envp);
    lua_pop(L, 1);
    const char *cwd = lmod_opt_string(L, 2, "cwd", NULL);
    const char *in = lmod_opt_string(L, 2, "stdin", NULL);
    const char *out = lmod_opt_string(L, 2, "stdout", NULL);
    const char *err = lmod_opt_string(L, 2, "stderr", NULL);
    int new_session = lmod_opt_boolean(L, 2, "setsid", 0);

    int fds[3] = {-1, -1, -1};
    if (in && (fds[0] = open_redirect(in, O_RDONLY)) < 0)
        return lmod_fail(L, "cannot open %s: %s", in, strerror(errno));
    if (out && (fds[1] = open_redirect(out, O_WRONLY | O_CREAT | O_APPEND)) < 0) {
        int e = errno;
        if (fds[0] >= 0)
            close(fds[0]);
        return lmod_fail(L, "cannot open %s: %s", out, strerror(e));
    }
    if (err && strcmp(err, "stdout") != 0 &&
        (fds[2] = open_redirect(err, O_WRONLY | O_CREAT | O_APPEND)) < 0) {
        int e = errno;
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        return lmod_fail(L, "cannot open %s: %s", err, strerror(e));
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (new_session)
            setsid();
        if (fds[0] >= 0)
            dup2(fds[0], 0);
        if (fds[1] >= 0)
            dup2(fds[1], 1);
        if (fds[2] >= 0)
            dup2(fds[2], 2);
        else if (err && strcmp(err, "stdout") == 0)
            dup2(1, 2);
        child_exec(a, cwd);
    }
    int e = errno;
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    lua_settop(L, ud);
    if (pid < 0)
        return lmod_fail(L, "fork: %s", strerror(e));
    track(pid);
    lua_pushinteger(L, pid);
    return 1;
}

static void push_wait_status(lua_State *L, int status)
{
    lua_createtable(L, 0, 2);
    if (WIFEXITED(status)) {
        lua_pushinteger(L, WEXITSTATUS(status));
        lua_setfield(L, -2, "code");
    } else if (WIFSIGNALED(status)) {
        lua_pushinteger(L, WTERMSIG(status));
        lua_setfield(L, -2, "signal");
    }
}

static const char *const run_keys[] = {"env", "cwd", "input", "timeout", NULL};

/* Runs argv to completion, capturing stdout and stderr. The child gets its own process
 * group, so a timeout kills everything it started. */
static int sys_run(lua_State *L)
{
    lmod_check_options(L, 2, run_keys, "sys.run");
    spawn_args *a = new_spawn_args(L);
    check_argv(L, 1, &a->argv);
    if (lua_istable(L, 2))
        lua_getfield(L, 2, "env");
    else
        lua_pushnil(L);
    build_envp(L, lua_gettop(L), &a->envp);
    lua_pop(L, 1);
    const char *cwd = lmod_opt_string(L, 2, "cwd", NULL);
    size_t input_len = 0;
    const char *input = NULL;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "input");
        if (lua_isstring(L, -1))
            input = lua_tolstring(L, -1, &input_len);   /* anchored in the options */
        lua_pop(L, 1);
    }
    double timeout = lmod_opt_number(L, 2, "timeout", -1);

    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC) != 0)
        return lmod_fail(L, "pipe: %s", strerror(errno));
    if (pipe2(pout, O_CLOEXEC) != 0) {
        close(pin[0]);
        close(pin[1]);
        return lmod_fail(L, "pipe: %s", strerror(errno));
    }
    if (pipe2(perr, O_CLOEXEC) != 0) {
        close(pin[0]);
        close(pin[1]);
        close(pout[0]);
        close(pout[1]);
        return lmod_fail(L, "pipe: %s", strerror(errno));
    }
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        child_exec(a, cwd);
    }
    int fork_errno = errno;
    if (pid > 0)
        track(pid);
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    if (pid < 0) {
        close(pin[1]);
        close(pout[0]);
        close(perr[0]);
        return lmod_fail(L, "fork: %s", strerror(fork_errno));
    }
    fcntl(pin[1], F_SETFL, O_NONBLOCK);
    if (input_len == 0) {
        close(pin[1]);
        pin[1] = -1;
    }
    luaL_Buffer bout, berr;
    /* Collect into two Lua buffers kept in tables, as luaL_Buffer needs a stable stack. */
    lua_newtable(L);
    int chunks_out = lua_gettop(L), nout = 0;
    lua_newtable(L);
    int chunks_err = lua_gettop(L), nerr = 0;
    size_t written = 0;
    double deadline = timeout >= 0 ? host_now() + timeout : -1;
    int timed_out = 0;
    int open_fds = 2;
    while (open_fds > 0 || pin[1] >= 0) {
        struct pollfd pfd[3];
        int n = 0;
        if (pout[0] >= 0)
            pfd[n++] = (struct pollfd){.fd = pout[0], .events = POLLIN};
        if (perr[0] >= 0)
            pfd[n++] = (struct pollfd){.fd = perr[0], .events = POLLIN};
        if (pin[1] >= 0)
            pfd[n++] = (struct pollfd){.fd = pin[1], .events = POLLOUT};
        int ms = -1;
        if (deadline >= 0) {
            double left = deadline - host_now();
            if (left <= 0) {
                timed_out = 1;
                break;
            }
            ms = (int)ceil(left * 1000);
        }
        int r = poll(pfd, (nfds_t)n, ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        for (int i = 0; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            if (pfd[i].fd == pin[1]) {
                ssize_t w = write(pin[1], input + written, input_len - written);
                if (w > 0)
                    written += (size_t)w;
                if (w < 0 && errno != EAGAIN && errno != EINTR)
                    written = input_len;
                if (written >= input_len) {
                    close(pin[1]);
                    pin[1] = -1;
                }
                continue;
            }
            char buf[16384];
            ssize_t got = read(pfd[i].fd, buf, sizeof buf);
            if (got > 0) {
                int is_out = pfd[i].fd == pout[0];
                lua_pushlstring(L, buf, (size_t)got);
                lua_rawseti(L, is_out ? chunks_out : chunks_err, is_out ? ++nout : ++nerr);
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                if (pfd[i].fd == pout[0]) {
                    close(pout[0]);
                    pout[0] = -1;
                } else {
                    close(perr[0]);
                    perr[0] = -1;
                }
                open_fds--;
            }
        }
    }
    if (timed_out)
        kill(-pid, SIGKILL);
    if (pin[1] >= 0)
        close(pin[1]);
    if (pout[0] >= 0)
        close(pout[0]);
    if (perr[0] >= 0)
        close(perr[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    untrack(pid);
    push_wait_status(L, status);
    int result = lua_gettop(L);
    luaL_buffinit(L, &bout);
    for (int i = 1; i <= nout; i++) {
        lua_rawgeti(L, chunks_out, i);
        luaL_addvalue(&bout);
    }
    luaL_pushresult(&bout);
    lua_setfield(L, result, "stdout");
    luaL_buffinit(L, &berr);
    for (int i = 1; i <= nerr; i++) {
        lua_rawgeti(L, chunks_err, i);
        luaL_addvalue(&berr);
    }
    luaL_pushresult(&berr);
    lua_setfield(L, result, "stderr");
    lua_pushboolean(L, timed_out);
    lua_setfield(L, result, "timed_out");
    return 1;
}

static int signal_number(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER)
        return (int)lua_tointeger(L, idx);
    static const struct {
        const char *name;
        int sig;
    } names[] = {{"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT},   {"HUP", SIGHUP},
                 {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"QUIT", SIGQUIT}, {"USR1", SIGUSR1},
                 {"USR2", SIGUSR2}, {"0", 0}};
    const char *name = luaL_optstring(L, idx, "TERM");
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(names[i].name, name) == 0)
            return names[i].sig;
    return luaL_argerror(L, idx, "unknown signal name");
}

/* sys.kill(pid, sig): a negative pid signals a process group. */
static int sys_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = signal_number(L, 2);
    if (pid == 0 || pid == -1)
        return luaL_argerror(L, 1, "refusing to signal pid 0 or -1");
    if (kill(pid, sig) != 0)
        return lmod_fail(L, "kill %d: %s", (int)pid, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static int sys_alive(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    reap_orphans();
    /* Reap it if it is our exited child, so a zombie does not count as alive. */
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
        untrack(pid);
        lua_pushboolean(L, 0);
        return 1;
    }
    int alive = pid > 0 && kill(pid, 0) == 0;
    if (alive) {
        /* A zombie (exited, not yet reaped by a parent that may never reap it, as when
         * a daemon's parent is a container's pid 1) is not alive. */
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            buf[n] = '\0';
            const char *close_paren = strrchr(buf, ')');
            if (close_paren && close_paren[1] == ' ' && close_paren[2] == 'Z')
                alive = 0;
        }
    }
    lua_pushboolean(L, alive);
    return 1;
}

/* sys.wait(pid[, timeout]) -> {code|signal}, or nil, "timeout" / error message. */
static int sys_wait(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    double timeout = luaL_optnumber(L, 2, -1);
    double deadline = timeout >= 0 ? host_now() + timeout : -1;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, deadline >= 0 ? WNOHANG : 0);
        if (r == pid) {
            untrack(pid);
            push_wait_status(L, status);
            return 1;
        }
        if (r < 0 && errno != EINTR)
            return lmod_fail(L, "waitpid %d: %s", (int)pid, strerror(errno));
        if (deadline >= 0 && host_now() >= deadline)
            return lmod_fail(L, "timeout");
        if (r == 0) {
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
        }
    }
}

static const luaL_Reg sys_functions[] = {
    {"environ", sys_environ}, {"setenv", sys_setenv},   {"getpid", sys_getpid},
    {"geteuid", sys_geteuid}, {"free_port", sys_free_port}, {"mkdtemp", sys_mkdtemp},
    {"exists", sys_exists},   {"spawn", sys_spawn},     {"run", sys_run},
    {"read_file", sys_read_file}, {"write_file", sys_write_file},
    {"kill", sys_kill},       {"alive", sys_alive},     {"wait", sys_wait},
    {"reap", sys_reap},
    {NULL, NULL},
};

LMOD_OPEN(sys)
{
    lmod_new_module(L, sys_functions);
    return 1;
}
