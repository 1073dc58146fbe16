/*
 * main.c - the loreley-host command line: options, modes and exit codes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "host.h"
#include "log.h"

static const char usage_text[] =
    "usage: loreley-host [options] POLICY.lua [-- args...]\n"
    "       loreley-host --once SCRIPT.lua [-- args...]\n"
    "       loreley-host --init-db\n"
    "       loreley-host --simulate [lab options] POLICY.lua...\n"
    "\n"
    "Runs a Loreley scheduling policy: every poll interval, tick(ctx) ingests finished\n"
    "jobs into the MAP-Elites archive, dispatches pending jobs to the Dramatiq queue and\n"
    "schedules new ones. Settings come from the environment and ./.env (Loreley's names).\n"
    "\n"
    "options:\n"
    "  --once             run init, one tick and shutdown; a file that returns no policy\n"
    "                     table runs as a script to completion\n"
    "  --check            validate the policy and the settings, print the resolved\n"
    "                     settings (secrets masked) and exit\n"
    "  --init-db          apply the database migrations and exit\n"
    "  --simulate         run policies in the policy lab (see --simulate --help)\n"
    "  --log-level LEVEL  DEBUG, INFO, WARNING or ERROR (default: LOG_LEVEL or INFO)\n"
    "  --http ADDR:PORT   serve metrics, the status page and the control plane there\n"
    "                     (daemon mode; default: LORELEY_HTTP_LISTEN, or no server);\n"
    "                     ADDR defaults to 127.0.0.1, port 0 picks a free port\n"
    "  --version          print the version and exit\n"
    "  --help             print this help and exit\n"
    "\n"
    "exit codes: 0 success, 1 runtime failure, 2 usage or configuration error\n"
    "signals: SIGINT/SIGTERM stop after running shutdown; SIGHUP reloads the policy\n";

static int usage_error(const char *fmt, const char *arg)
{
    fputs("loreley-host: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\nTry 'loreley-host --help'.\n", stderr);
    return HOST_EXIT_USAGE;
}

static int set_mode(host_options *o, host_mode mode, const char *flag)
{
    if (o->mode != HOST_MODE_DAEMON && o->mode != mode)
        return usage_error("%s cannot be combined with another mode option", flag);
    o->mode = mode;
    return 0;
}

int main(int argc, char **argv)
{
    host_options o;
    memset(&o, 0, sizeof o);
    o.mode = HOST_MODE_DAEMON;

    const char *format = getenv("LOG_FORMAT");
    if (format && strcmp(format, "json") == 0)
        log_set_format(LOG_FORMAT_JSON);
    log_level level;
    const char *env_level = getenv("LOG_LEVEL");
    if (env_level && log_parse_level(env_level, &level) == 0)
        log_set_level(level);

    int i = 1;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (a[0] != '-' || a[1] == '\0') {
            if (o.policy_path)
                return usage_error("unexpected argument '%s' (policy arguments go after --)",
                                   a);
            o.policy_path = a;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            return HOST_EXIT_OK;
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            printf("loreley-host %s\n", LORELEY_VERSION);
            return HOST_EXIT_OK;
        } else if (strcmp(a, "--once") == 0) {
            if (set_mode(&o, HOST_MODE_ONCE, a))
                return HOST_EXIT_USAGE;
        } else if (strcmp(a, "--check") == 0) {
            if (set_mode(&o, HOST_MODE_CHECK, a))
                return HOST_EXIT_USAGE;
        } else if (strcmp(a, "--init-db") == 0) {
            if (set_mode(&o, HOST_MODE_INIT_DB, a))
                return HOST_EXIT_USAGE;
        } else if (strcmp(a, "--simulate") == 0) {
            if (set_mode(&o, HOST_MODE_SIMULATE, a))
                return HOST_EXIT_USAGE;
            i++;
            break;   /* the rest are lab arguments */
        } else if (strcmp(a, "--log-level") == 0 || strncmp(a, "--log-level=", 12) == 0) {
            const char *value = a[11] == '=' ? a + 12 : (i + 1 < argc ? argv[++i] : NULL);
            if (!value)
                return usage_error("%s needs a value (DEBUG, INFO, WARNING, ERROR)", a);
            if (log_parse_level(value, &level) != 0)
                return usage_error("unknown log level '%s' (DEBUG, INFO, WARNING, ERROR)",
                                   value);
            log_set_level(level);
            o.log_level = value;
        } else if (strcmp(a, "--http") == 0 || strncmp(a, "--http=", 7) == 0) {
            const char *value = a[6] == '=' ? a + 7 : (i + 1 < argc ? argv[++i] : NULL);
            if (!value || !*value)
                return usage_error("%s needs an address, e.g. --http 127.0.0.1:9464", a);
            o.http_listen = value;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    o.argc = argc - i;
    o.argv = argv + i;

    if (o.mode == HOST_MODE_INIT_DB) {
        if (o.policy_path)
            return usage_error("--init-db takes no policy file (got '%s')", o.policy_path);
    } else if (o.mode != HOST_MODE_SIMULATE && !o.policy_path) {
        return usage_error("%s", "no policy file given");
    }
    return host_main(&o);
}
