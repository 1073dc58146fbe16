/*
 * host.h - the loreley-host runtime: the Lua state, policy loading and validation, the
 * tick loop, signals and the interruptible clock.
 */
#ifndef LORELEY_HOST_H
#define LORELEY_HOST_H

#include <lua.h>

/* Exit codes of the executable. */
enum {
    HOST_EXIT_OK = 0,
    HOST_EXIT_FAILURE = 1,   /* runtime failure: policy error, tick error in --once, ... */
    HOST_EXIT_USAGE = 2,     /* bad command line or configuration (settings) */
};

typedef enum host_mode {
    HOST_MODE_DAEMON,     /* tick every interval until stopped */
    HOST_MODE_ONCE,       /* one tick (policy) or the file as a script */
    HOST_MODE_CHECK,      /* validate policy + settings, print settings, exit */
    HOST_MODE_INIT_DB,    /* apply the schema migrations and exit */
    HOST_MODE_SIMULATE,   /* the policy lab: policy against simulated workers */
} host_mode;

typedef struct host_options {
    host_mode mode;
    const char *policy_path;   /* NULL only for --init-db */
    int argc;                  /* policy arguments after "--" */
    char **argv;
    const char *log_level;     /* --log-level, or NULL for LOG_LEVEL */
    const char *http_listen;   /* --http ADDR:PORT, or NULL for the setting */
} host_options;

/* Runs the host as the options say; returns the process exit code. */
int host_main(const host_options *options);

/* --- clock and signals (used by the bindings) ---------------------------------------- */

/* Monotonic seconds since an arbitrary origin. */
double host_now(void);
/* Wall-clock seconds since the epoch. */
double host_wall_time(void);

/* Installs SIGINT/SIGTERM (stop), SIGHUP (reload) and ignores SIGPIPE. Idempotent. */
void host_install_signals(void);
int host_stop_requested(void);
void host_request_stop(void);
/* Returns and clears a pending reload request (SIGHUP). */
int host_take_reload_request(void);
void host_request_reload(void);

/* The HTTP face (loreley.http) asks the main thread to serve queued control requests.
 * Safe to call from any thread: sets a flag and wakes host_sleep. */
void host_request_service(void);
/* Returns and clears a pending service request. */
int host_take_service_request(void);

/*
 * Sleeps up to `seconds`, waking at once when a stop is requested, or when a reload or
 * a service request is pending and wake_on_reload is set (the tick loop's sleep).
 * Returns 1 if the full time elapsed, 0 if woken.
 */
int host_sleep(double seconds, int wake_on_reload);

/*
 * Calls the function below nargs arguments on the stack under protection with a
 * traceback. On success leaves nresults values and returns 0; on failure leaves one
 * string "message\nstack traceback:..." and returns the pcall status.
 */
int host_docall(lua_State *L, int nargs, int nresults);

#endif
